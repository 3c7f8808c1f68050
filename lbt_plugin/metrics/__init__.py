"""Metrics of GAN samples, one job per module:

- :mod:`~lbt_plugin.metrics.modes2d`: the 2-D ring and grid (:class:`DataMixture`) and their mode counts
  (:func:`mode_stats`, the VEEGAN / PacGAN protocol);
- :mod:`~lbt_plugin.metrics.stacked`: stacked images (three channels, 1000 modes): the
  :class:`ChannelClassifier`, its training and cache, its features, :func:`stacked_mode_stats`;
- :mod:`~lbt_plugin.metrics.fid`: FID by pytorch-fid (:func:`fid`, behind ``lbt-plugin fid``) and
  :func:`save_images`.
"""
from .fid import FID_WEIGHTS_FILE, fid, save_images
from .modes2d import DataMixture, ModeStats, grid, mode_stats, ring
from .stacked import (ChannelClassifier, StackedModeStats, classifier_features, load_channel_classifier,
                      stacked_mode_stats, train_channel_classifier)

__all__ = ["DataMixture", "ring", "grid", "ModeStats", "mode_stats",
           "ChannelClassifier", "train_channel_classifier", "load_channel_classifier", "classifier_features",
           "StackedModeStats", "stacked_mode_stats",
           "FID_WEIGHTS_FILE", "fid", "save_images"]
