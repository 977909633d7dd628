"""DataIGM: reading, importing and pairing image sets."""
