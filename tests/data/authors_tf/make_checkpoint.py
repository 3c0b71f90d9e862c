"""Writes the authors'-format TF1 checkpoint that tests/test_import_weights.py imports.

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf-slim numpy
    /tmp/tfvenv/bin/python tests/data/authors_tf/make_checkpoint.py      # rewrites the files below

TensorFlow is not a dependency of the project: it runs only here, once, in a throwaway
environment, and the files it wrote are committed beside this script (tensorflow-cpu 2.21,
tf-slim 1.1, in TF1 graph mode through tf.compat.v1):

    model.ckpt.index, model.ckpt.data-00000-of-00001, checkpoint   the checkpoint (tf.train.Saver)
    label.npy    uint8 [16, 32]: the fixed label map (class indices, void = 19)
    output.npy   float32 [K, 16, 32, 3]: what TensorFlow's generator made of it with these weights

The graph is the authors' `recursive_generator` (demo_256p.py) with slim.conv2d,
slim.layer_norm and their lrelu, for a small model: modules at 4x8, 8x16 and 16x32 with
widths 8, 6 and 4 (distinct, so a mixed-up module or channel order cannot fit by accident),
L = 20 label channels (19 classes + void, fed as the authors fed them: the palette channels
then 1 - their sum) and a planar head of 3K = 6 channels (K = 2). Every variable is set to
random values, the layer-norm scales and shifts and the head's bias included, so that each
one's mapping shows in the output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_slim as slim

HERE = Path(__file__).resolve().parent
TOP = 16  # the authors' `sp`: the top module's height (16x32)
WIDTHS = {4: 8, 8: 6, 16: 4}  # module height -> channels
NUM_CLASSES = 20
NUM_OUTPUTS = 2

tf1 = tf.compat.v1
tf1.disable_eager_execution()


def lrelu(x):
    return tf.maximum(0.2 * x, x)


def recursive_generator(label, sp):
    """The authors' generator (demo_256p.py), with this script's widths and head size."""
    dim = WIDTHS[sp]
    if sp == 4:
        net_input = label
    else:
        downsampled = tf1.image.resize_area(label, (sp // 2, sp), align_corners=False)
        upsampled = tf1.image.resize_bilinear(recursive_generator(downsampled, sp // 2), (sp, sp * 2),
                                              align_corners=True)
        net_input = tf.concat([upsampled, label], 3)
    net = slim.conv2d(net_input, dim, [3, 3], rate=1, normalizer_fn=slim.layer_norm, activation_fn=lrelu,
                      scope="g_" + str(sp) + "_conv1")
    net = slim.conv2d(net, dim, [3, 3], rate=1, normalizer_fn=slim.layer_norm, activation_fn=lrelu,
                      scope="g_" + str(sp) + "_conv2")
    if sp == TOP:
        net = slim.conv2d(net, 3 * NUM_OUTPUTS, [1, 1], rate=1, activation_fn=None,
                          scope="g_" + str(sp) + "_conv100")
        net = (net + 1.0) / 2.0 * 255.0
        # The authors' planar split: [1, H, W, 3K] -> K images [K, H, W, 3].
        split0, split1, split2 = tf.split(tf.transpose(net, perm=[3, 1, 2, 0]), num_or_size_splits=3, axis=0)
        net = tf.concat([split0, split1, split2], 3)
    return net


def fixed_label_map(rng: np.random.Generator) -> np.ndarray:
    """Blocks of classes (so the area-averaged coarse levels mix classes) with some void."""
    coarse = rng.integers(0, NUM_CLASSES, size=(4, 8))
    labels = np.kron(coarse, np.ones((4, 4), dtype=np.int64))
    labels[rng.random(labels.shape) < 0.1] = rng.integers(0, NUM_CLASSES)  # scattered pixels
    return labels.astype(np.uint8)


def main() -> None:
    rng = np.random.default_rng(20171022)
    labels = fixed_label_map(rng)
    palette_channels = np.eye(NUM_CLASSES, dtype=np.float32)[labels][..., :-1]  # the 19 palette classes
    semantic = palette_channels[None]  # [1, H, W, 19], as helper.get_semantic_map gives it
    feed = np.concatenate((semantic, np.expand_dims(1 - np.sum(semantic, axis=3), axis=3)), axis=3)

    label = tf1.placeholder(tf.float32, [None, None, None, NUM_CLASSES])
    generator = recursive_generator(label, TOP)
    variables = [v for v in tf1.global_variables() if v.name.startswith("g_")]
    with tf1.Session() as sess:
        for variable in variables:
            shape = variable.shape.as_list()
            if variable.name.endswith("/gamma:0"):
                value = 1.0 + 0.3 * rng.standard_normal(shape)
            elif variable.name.endswith(("/beta:0", "/biases:0")):
                value = 0.3 * rng.standard_normal(shape)
            else:
                fan_in = int(np.prod(shape[:-1]))
                value = rng.standard_normal(shape) / np.sqrt(fan_in)
            variable.load(value.astype(np.float32), sess)
        output = sess.run(generator, feed_dict={label: feed})
        tf1.train.Saver(var_list=variables, save_relative_paths=True).save(sess, str(HERE / "model.ckpt"), write_meta_graph=False)
    np.save(HERE / "label.npy", labels)
    np.save(HERE / "output.npy", output.astype(np.float32))
    print(f"wrote {len(variables)} variables, output {output.shape}, range {output.min():.1f}..{output.max():.1f}")


if __name__ == "__main__":
    main()
