"""TFLite conversion: both converters give the Keras model's outputs."""

import numpy as np
import pytest
import tiny
from invariants import assert_equivalent, live_batchnorm, outputs, swapped_channels

from hos_keras import export


@pytest.mark.parametrize("convert", [export.to_tflite, export.timing_flatbuffer])
def test_tflite_outputs_match_keras(convert):
    model = live_batchnorm(tiny.residual_cnn())
    x, _ = tiny.images(4, (8, 8, 3))
    runner = export.interpreter(convert(model), threads=1)
    (given,) = runner.get_input_details()
    (taken,) = runner.get_output_details()
    got = []
    for image in x:  # the converted model takes batches of one
        runner.set_tensor(given["index"], image[None])
        runner.invoke()
        got.append(runner.get_tensor(taken["index"])[0])
    assert_equivalent(
        outputs(model, x),
        np.stack(got),
        decoys=[outputs(swapped_channels(model), x)],
        name=f"{model.name} through export.{convert.__name__}",
    )
