"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a test that takes more than a few seconds (CI runs them)"
    )
    # Keras 3 / TensorFlow call np.array(variable) when saving, which numpy 2.4
    # reports as deprecated; the warning is theirs, not ours.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword"
        ":DeprecationWarning",
    )
