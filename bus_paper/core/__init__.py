"""The core library: what every paper's chapter builds on (statistics first; data, models and
training move here with the layout issue, see ARCHITECTURE.md)."""
