"""data/path.py's DataSettings and data/augment.py's Augment.of: the training configuration's data
and augmentation settings read by name, so train/setup.py hands them over without choosing."""

import dataclasses

from resnetlab.data.augment import CONFIG_NAMES, Augment
from resnetlab.data.path import DataSettings
from resnetlab.train.presets import make_config


def test_data_settings_carry_every_data_setting_of_the_config():
    cfg = make_config(
        "quick", subset=300, val_split=30, seed=7, erasing=0.25, trivial_augment=True, workers=0
    )
    settings = DataSettings.of(cfg)
    for field in dataclasses.fields(DataSettings):
        if field.name != "augment":
            assert getattr(settings, field.name) == getattr(cfg, field.name), field.name
    for field in dataclasses.fields(Augment):
        if field.name != "resized_crop":  # on streamed data only: the next test
            setting = CONFIG_NAMES.get(field.name, field.name)
            assert getattr(settings.augment, field.name) == getattr(cfg, setting), field.name
    assert settings.augment.trivial and settings.augment.erasing == 0.25


def test_random_resized_crops_only_on_streamed_data():
    cfg = make_config("quick", crop_padding=0, random_resized_crop=True)
    assert not Augment.of(cfg, streamed=False).resized_crop
    assert Augment.of(cfg, streamed=True).resized_crop
    assert DataSettings.of(dataclasses.replace(cfg, data="shards:/nowhere")).augment.resized_crop
