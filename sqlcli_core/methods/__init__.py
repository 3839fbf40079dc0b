"""Methods: the losses that train a network, and what each method's network outputs."""
