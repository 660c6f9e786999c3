"""Messages go through logging (issue 17): warnings always reach stderr, progress (INFO: epoch
lines, tqdm bars) only when asked for, which the CLI does and the book's notebooks do not."""

import logging

from bus_paper.core import log as busl


def test_warnings_always_reach_stderr_and_progress_only_when_asked(capsys):
    log = logging.getLogger("bus_paper.train.engine")
    previous = busl.verbose(False)
    try:
        log.warning("a corrupt file, moved aside")
        log.info("epoch 1/5")
        err = capsys.readouterr().err
        assert "a corrupt file, moved aside" in err and "epoch" not in err
        assert not busl.shows_progress(log)
        busl.verbose(True)
        log.info("epoch 2/5")
        assert capsys.readouterr().err == "epoch 2/5\n" and busl.shows_progress(log)
    finally:
        logging.getLogger("bus_paper").setLevel(previous)


def test_the_cli_turns_progress_on_for_its_command_only(monkeypatch):
    import bus_paper.cli as cli

    seen = []
    parser = cli.build_parser()

    def fake_parse(argv):
        args = parser.parse_args(["data", "check"] if not argv else argv)
        args.func = lambda a: seen.append(busl.shows_progress(logging.getLogger("bus_paper.x")))
        return args

    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": staticmethod(fake_parse)})())
    previous = busl.verbose(False)
    try:
        assert cli.main([]) == 0 and cli.main(["-q", "data", "check"]) == 0
        assert seen == [True, False]
        assert not busl.shows_progress(logging.getLogger("bus_paper.x"))  # restored afterwards
    finally:
        logging.getLogger("bus_paper").setLevel(previous)
