"""The tiny teacher/student pair the distribution test scripts train."""

import keras
from keras import layers

import hos_keras


def build(optimizer: keras.optimizers.Optimizer) -> hos_keras.HOSDistiller:
    """A seeded Dense teacher, its half-width student and their compiled distiller."""
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
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return distiller
