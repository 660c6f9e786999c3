"""Paper 004 (Bashir & Bhosle 2025): multi-backbone feature fusion with classical classifiers,
on mammography (mini-MIAS) and ultrasound, and image + clinical fusion (BUS-BRA).

The paper is a review with a loosely specified pipeline (its section 3); the concrete version
built here, step by step:

- :mod:`.prep`: section 3.2 (median and Gaussian filters, CLAHE, lesion ROI, resize, z-score,
  augmentation), each step switchable;
- :mod:`.features`: section 3.3 (ResNet-50, VGG16, EfficientNet-B0 pooled embeddings from our own
  SimCLR pretraining on the matching modality; random initialisation as the floor);
- :mod:`.fusion`: section 3.4 (PCA per backbone, concatenation or a multi-head attention fusion
  module trained on the training part; the torch models Grad-CAM needs);
- :mod:`.classical`: section 3.5 (kNN, SVM, random forest, a small neural network, tuned by
  cross-validation inside the training part);
- :mod:`.evaluate`: section 3.12 (accuracy, precision, recall, specificity, F1, AUC with
  cluster-bootstrap CIs; paired differences);
- :mod:`.run`: the tasks and their tables; :mod:`.report`: Grad-CAM comparison, figures and the
  verdict on the paper's claims.
"""
