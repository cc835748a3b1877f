"""One worker of a 2-worker MultiWorkerMirroredStrategy HOSDistiller fit.

Usage: multiworker_fit.py OUT.npz (TF_CONFIG names the cluster and this task).
Both workers read the same data; the strategy splits each global batch. Uses
hos_keras.fit_distributed: Keras 3's Model.fit fails under this strategy.
"""

import sys

import keras
import numpy as np
import tensorflow as tf
from keras import layers

import hos_keras

strategy = tf.distribute.MultiWorkerMirroredStrategy()


def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    x = layers.ReLU(name="r")(layers.Dense(6, name="h")(inputs))
    x = layers.ReLU(name="r2")(layers.Dense(4, name="h2")(x))
    teacher = keras.Model(inputs, layers.Dense(3, name="out")(x))
    plan = hos_keras.plan_pruning(
        teacher, criterion="l1", allocation="fixed", ratio=0.5
    )
    student = hos_keras.slim_model(teacher, plan)
    distiller = hos_keras.HOSDistiller(
        student, teacher, plan=plan, pivots=["r", "r2"], output_weight=2.0
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return distiller


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
