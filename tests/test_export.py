"""TFLite conversion: both converters give the Keras model's outputs."""

import keras
import numpy as np
import pytest
import tiny

from hos_keras import export, latency


@pytest.mark.parametrize("convert", [export.to_tflite, latency.to_tflite])
def test_tflite_outputs_match_keras(convert):
    model = tiny.residual_cnn()
    x, _ = tiny.images(1, (8, 8, 3))
    runner = export.interpreter(convert(model), threads=1)
    (given,) = runner.get_input_details()
    (taken,) = runner.get_output_details()
    runner.set_tensor(given["index"], x)
    runner.invoke()
    np.testing.assert_allclose(
        runner.get_tensor(taken["index"]),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-4,
        atol=1e-5,
    )
