"""One worker of a 2-worker MultiWorkerMirroredStrategy HOSDistiller fit.

Usage: multiworker_fit.py OUT.npz (TF_CONFIG names the cluster and this task).
Both workers read the same data; the strategy splits each global batch. Uses
hos_keras.fit_distributed: Keras 3's Model.fit fails under this strategy.
"""

import sys

import keras
import numpy as np
import tensorflow as tf
import tiny_distiller

import hos_keras

strategy = tf.distribute.MultiWorkerMirroredStrategy()


def build():
    return tiny_distiller.build(keras.optimizers.SGD(0.1, momentum=0.9))


rng = np.random.default_rng(1)
x = rng.normal(size=(64, 5)).astype("float32")
y = rng.integers(0, 3, 64)
with strategy.scope():
    distiller = build()
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = (
    tf.data.experimental.AutoShardPolicy.DATA
)
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).with_options(options)
with strategy.scope():
    history = hos_keras.fit_distributed(distiller, dataset, epochs=2)
np.savez(sys.argv[1], *distiller.student.get_weights(), loss=np.array(history["loss"]))
