"""Pure tensor operations shared by codecs: bit packing, metrics, validation."""
