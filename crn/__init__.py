"""The Cascaded Refinement Network in plain PyTorch (Chen & Koltun, ICCV 2017).

resolution.py  Resolution: an image size, "HxW"
config.py   CRNConfig: classes, widths per module, number of outputs K
presets.py  named presets (crn-256p, crn-512p, crn-1024p and small CPU ones)
labels.py   one-hot label maps and their area-averaged pyramid
model.py    the generator (refinement modules named by resolution) and to_uint8_images
vgg.py      the VGG-19 loss network as the authors used it
matconvnet.py  the authors' VGG-19 file (imagenet-vgg-verydeep-19.mat), read as they read it
losses.py   per-class, per-layer feature matching, the diversity loss, recalibration
generators.py  generators by name (the CRN, and any other kind): what checkpoints hold
checkpoint.py  one self-describing checkpoint file (from a path or bytes)
inference.py   label maps -> uint8 images, at a fixed padded batch shape
tf_checkpoint.py  the tensors of a TensorFlow 1 checkpoint, read without TensorFlow
authors.py     the authors' released generators' variables -> CRN weights

Nothing here knows about Ray, MLflow or Parquet; the only foreign files it reads are the
authors' own (their TF checkpoints and their MatConvNet VGG-19), with numpy and scipy.
"""
