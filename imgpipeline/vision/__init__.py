"""Pure image code: decoding, quality metrics, the detector, drawing."""
