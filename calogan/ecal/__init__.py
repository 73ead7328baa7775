"""The ECAL fast simulation: data format, shower simulator, 24 statistics, models, trainer, prediction, export."""
