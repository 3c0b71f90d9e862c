"""The Cascaded Refinement Network in plain PyTorch (Chen & Koltun, ICCV 2017).

resolution.py  Resolution: an image size, "HxW"
config.py   CRNConfig: classes, widths per module, number of outputs K
presets.py  named presets (crn-256p, crn-512p, crn-1024p and small CPU ones)
labels.py   one-hot label maps and their area-averaged pyramid
model.py    the generator (refinement modules named by resolution) and to_uint8_images
vgg.py      the VGG-19 loss network as the authors used it
losses.py   per-class, per-layer feature matching, the diversity loss, recalibration
checkpoint.py  one self-describing checkpoint file (from a path or bytes)
inference.py   label maps -> uint8 images, at a fixed padded batch shape

Nothing here knows about Ray, MLflow or file formats other than torch's own.
"""
