"""From a source URI to the cached, resized images and frozen features the training reads."""
