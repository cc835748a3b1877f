"""One HOSDistiller step on one device and under a 2-CPU MirroredStrategy.

Run as a separate process: the logical devices must be set before TensorFlow
initialises. Prints a JSON line with both losses and the largest weight gap.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras
import numpy as np
import tiny_distiller


def build():
    return tiny_distiller.build(keras.optimizers.SGD(0.5))


rng = np.random.default_rng(1)
x = rng.normal(size=(8, 5)).astype("float32")
y = rng.integers(0, 3, 8)

single = build()
single_logs = single.train_on_batch(x, y, return_dict=True)
single_weights = single.student.get_weights()

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = build()
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
history = mirrored.fit(dataset, epochs=1, verbose=0)
gap = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(single_weights, mirrored.student.get_weights(), strict=True)
)
print(
    json.dumps(
        {
            "replicas": strategy.num_replicas_in_sync,
            "single": {k: float(v) for k, v in single_logs.items()},
            "mirrored": {k: float(v[0]) for k, v in history.history.items()},
            "max_weight_gap": gap,
        }
    )
)
