"""One compress run with output_dir, killed (SIGKILL) where the environment says.

    python resumable_compress.py OUTPUT_DIR [KILL_AT]

KILL_AT is `STAGE:EPOCH:BATCH` (e.g. `distill:1:2`: during the second epoch of
the distillation, after its third batch) or empty. Data, model and arguments are
fixed and seeded, with TensorFlow's op determinism, so that a run resumed after
the kill can be compared with an uninterrupted one. Prints the student's weights'
checksum and the report's stages as the last JSON line.
"""

import json
import os
import signal
import sys

os.environ["TF_DETERMINISTIC_OPS"] = "1"

import keras
import numpy as np
import tensorflow as tf

import hos_keras

DISTILL, FINETUNE = 2, 2


class Kill(keras.callbacks.Callback):
    def __init__(self, where):
        super().__init__()
        stage, epoch, batch = where.split(":")
        self.epoch = int(epoch) + (DISTILL if stage == "finetune" else 0)
        self.batch = int(batch)
        self.current = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    output_dir = sys.argv[1]
    kill = sys.argv[2] if len(sys.argv) > 2 else ""
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12, 12, 3)).astype("float32")
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype("int32")
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=2, input_shape=(12, 12, 3), width=8
    )
    train = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(16)
    val = (x[64:], y[64:])
    student, report = hos_keras.compress(
        model,
        train,
        val,
        criterion="l1",
        allocation="fixed",
        ratio=0.5,
        distill_epochs=DISTILL,
        finetune_epochs=FINETUNE,
        distill_optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        finetune_optimizer=keras.optimizers.SGD(0.02, momentum=0.9),
        recalibration_steps=2,
        latency_batch_sizes=(),
        tflite_latency=False,
        callbacks=[Kill(kill)] if kill else None,
        output_dir=output_dir,
        verbose=0,
    )
    weights = [np.asarray(w, np.float64) for w in student.get_weights()]
    print(
        json.dumps(
            {
                "weights": [float(np.sum(w)) for w in weights],
                "first": [float(v) for v in weights[0].ravel()[:5]],
                "metrics": report.metrics,
                "history": report.history,
            }
        )
    )


if __name__ == "__main__":
    main()
