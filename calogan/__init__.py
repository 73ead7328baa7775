"""calogan: conditional GAN fast simulation of the LHCb ECAL, with the 2019 challenge's data format,
a built-in shower simulator, a WGAN-GP trainer, the competition evaluator and a submission packager."""

__version__ = "0.1.0"
