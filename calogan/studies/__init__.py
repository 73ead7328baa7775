"""Studies on trained generators: physics-targeted fine-tuning and transfer between event selections."""
