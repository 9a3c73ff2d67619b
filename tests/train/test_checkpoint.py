"""checkpoint.pt without a training run (fast enough for mutation testing): what make_checkpoint
holds and write_checkpoint writes, load_checkpoint's one line for each kind of damage, the
restore into a model, an optimizer and a weight average, and the process-count check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from resnetlab.distributed.group import DistInfo
from resnetlab.errors import CheckpointError, UsageError, first_line
from resnetlab.train import make_config
from resnetlab.train.checkpoint import (
    CHECKPOINT_VERSION,
    check_resume_world_size,
    load_checkpoint,
    make_checkpoint,
    restore_checkpoint,
    write_checkpoint,
)
from resnetlab.train.engine import TrainState
from resnetlab.train.steps import WeightAverage


def parts(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # a momentum buffer in the optimizer's state
    return model, optimizer


def saved(tmp_path, *, average=None, policy=None, plan=None):
    model, optimizer = parts()
    state = TrainState(epoch=2, global_step=6, history=[{"epoch": 1}, {"epoch": 2}], bad_images=[4])
    ckpt = make_checkpoint(make_config(epochs=3), model, optimizer, state, 2, average, policy, plan)
    write_checkpoint(tmp_path / "checkpoint.pt", ckpt)
    return model, optimizer, ckpt


def test_a_written_checkpoint_loads_back_whole_from_the_run_folder(tmp_path):
    model, optimizer, ckpt = saved(tmp_path, policy={"amp": False}, plan={"epochs": 3})
    rng = torch.get_rng_state()  # nothing drew a number since the checkpoint was made
    assert set(ckpt) == {
        "config",
        "model",
        "optimizer",
        "state",
        "rng",
        "world_size",
        "policy",
        "plan",
    }
    assert torch.equal(ckpt["rng"]["torch"], rng) and ckpt["world_size"] == 2
    assert ckpt["config"] == make_config(epochs=3).to_dict() and ckpt["state"]["epoch"] == 2
    loaded = load_checkpoint(tmp_path)  # a folder means its checkpoint.pt
    assert loaded["version"] == CHECKPOINT_VERSION and "version" not in ckpt
    assert loaded["policy"] == {"amp": False} and loaded["plan"] == {"epochs": 3}
    assert all(torch.equal(v, loaded["model"][k]) for k, v in model.state_dict().items())
    assert (
        loaded["state"] == ckpt["state"]
        and loaded["optimizer"]["param_groups"] == ckpt["optimizer"]["param_groups"]
    )
    assert "average" not in saved(tmp_path)[2] and "policy" not in saved(tmp_path)[2]


def test_restore_loads_weights_optimizer_average_and_random_state(tmp_path):
    source, _ = parts(0)
    average = WeightAverage(source, 0.9)
    for _ in range(5):
        average.update()
    model, optimizer, _ = saved(tmp_path, average=average)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["average_updates"] == 5
    fresh, fresh_opt = parts(1)
    fresh_average = WeightAverage(fresh, 0.9)
    torch.manual_seed(123)  # the restore puts the saved random state back
    state = restore_checkpoint(ckpt, fresh, fresh_opt, "RUN", average=fresh_average)
    assert state == TrainState(**ckpt["state"]) and state.epoch == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    assert torch.equal(
        fresh_opt.state_dict()["state"][0]["momentum_buffer"],
        optimizer.state_dict()["state"][0]["momentum_buffer"],
    )
    assert int(fresh_average.updates) == 5
    assert all(
        torch.equal(v, average.model.state_dict()[k])
        for k, v in fresh_average.model.state_dict().items()
    )
    assert torch.equal(torch.get_rng_state(), ckpt["rng"]["torch"])
    del ckpt["average_updates"]  # written before the count was kept: one update per step
    restore_checkpoint(ckpt, fresh, fresh_opt, "RUN", average=fresh_average)
    assert int(fresh_average.updates) == 6


def test_restore_refuses_weights_of_another_shape_and_a_missing_average(tmp_path):
    saved(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    other = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
    try:
        other.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # torch's own words: several lines, 800-odd characters
        cause = " ".join(str(e).split())[:300]
    assert len(cause) == 300
    with pytest.raises(CheckpointError) as e:
        restore_checkpoint(ckpt, other, torch.optim.SGD(other.parameters(), lr=0.1), "RUN")
    assert str(e.value) == (
        f"RUN: the checkpoint's weights do not fit the model its configuration builds ({cause})"
    )
    model, optimizer = parts()
    with pytest.raises(
        CheckpointError,
        match=r"^RUN: the checkpoint holds no moving average of the weights, but its configuration asks for one \(--ema\); it is damaged or was edited$",
    ):
        restore_checkpoint(ckpt, model, optimizer, "RUN", average=WeightAverage(model, 0.9))


DAMAGE = {
    "config a list": (lambda c: c.update(config=[1]), "its 'config' is list, not a dict"),
    "no model": (lambda c: c.pop("model"), "its 'model' is NoneType, not a dict"),
    "no optimizer": (lambda c: c.pop("optimizer"), "its 'optimizer' is NoneType, not a dict"),
    "no state": (lambda c: c.pop("state"), "its 'state' is NoneType, not a dict"),
    "no rng": (lambda c: c.pop("rng"), "its 'rng' is NoneType, not a dict"),
    "plan a list": (lambda c: c.update(plan=[]), "its time plan is list, not a dict"),
    "test split a number": (
        lambda c: c.update(test_split=3),
        "its test split's digest is int, not a str",
    ),
    "empty model": (lambda c: c.update(model={}), "its model holds no tensors, or other things"),
    "model of numbers": (
        lambda c: c["model"].update(x=1),
        "its model holds no tensors, or other things",
    ),
    "empty average": (
        lambda c: c.update(average={}),
        "its weight average holds no tensors, or other things",
    ),
    "average a list": (
        lambda c: c.update(average=[torch.zeros(1)]),
        "its weight average holds no tensors, or other things",
    ),
    "average of numbers": (
        lambda c: c.update(average={"a": torch.zeros(1), "b": 2}),
        "its weight average holds no tensors, or other things",
    ),
    "updates negative": (
        lambda c: c.update(average_updates=-1),
        "its weight average's update count is -1",
    ),
    "updates a string": (
        lambda c: c.update(average_updates="7"),
        "its weight average's update count is '7'",
    ),
    "updates a bool": (
        lambda c: c.update(average_updates=True),
        "its weight average's update count is True",
    ),
    "optimizer without state": (
        lambda c: c["optimizer"].pop("state"),
        "its optimizer state is incomplete",
    ),
    "optimizer without groups": (
        lambda c: c["optimizer"].update(param_groups={}),
        "its optimizer state is incomplete",
    ),
    "rng of floats": (
        lambda c: c.update(rng={"torch": torch.zeros(3)}),
        "its random-number state is not a byte tensor",
    ),
    "rng a list": (
        lambda c: c.update(rng={"torch": [1]}),
        "its random-number state is not a byte tensor",
    ),
    "unknown entries": (
        lambda c: c["state"].update(zz=1, aa=2),
        "its state has unknown entries ['aa', 'zz']",
    ),
    "epoch a string": (lambda c: c["state"].update(epoch="x"), "its state's epoch is 'x'"),
    "epoch a bool": (lambda c: c["state"].update(epoch=True), "its state's epoch is True"),
    "step a float": (
        lambda c: c["state"].update(step_in_epoch=1.0),
        "its state's step_in_epoch is 1.0",
    ),
    "global step": (
        lambda c: c["state"].update(global_step=None),
        "its state's global_step is None",
    ),
    "best epoch": (lambda c: c["state"].update(best_epoch="1"), "its state's best_epoch is '1'"),
    "train seconds": (
        lambda c: c["state"].update(train_seconds="1"),
        "its state's train_seconds is '1'",
    ),
    "wall seconds": (
        lambda c: c["state"].update(wall_seconds=[]),
        "its state's wall_seconds is []",
    ),
    "best acc": (
        lambda c: c["state"].update(best_val_acc=None),
        "its state's best_val_acc is None",
    ),
    "history a dict": (lambda c: c["state"].update(history={}), "its state's history is {}"),
    "partial": (lambda c: c["state"].update(partial=0), "its state's partial is 0"),
    "bad images": (lambda c: c["state"].update(bad_images=3), "its state's bad_images is 3"),
    "partial bad": (lambda c: c["state"].update(partial_bad=()), "its state's partial_bad is ()"),
    "negative epoch": (
        lambda c: c["state"].update(epoch=-1, history=[]),
        "its state counts negative steps",
    ),
    "negative step": (
        lambda c: c["state"].update(step_in_epoch=-1),
        "its state counts negative steps",
    ),
    "negative global": (
        lambda c: c["state"].update(global_step=-1),
        "its state counts negative steps",
    ),
    "past the end": (
        lambda c: c["state"].update(epoch=4),
        "its state is past the run's end (epoch 4 of 3)",
    ),
    "bad image a string": (
        lambda c: c["state"].update(bad_images=["x"]),
        "its state's bad_images holds something other than image indices",
    ),
    "bad image negative": (
        lambda c: c["state"].update(bad_images=[-1]),
        "its state's bad_images holds something other than image indices",
    ),
    "bad image a bool": (
        lambda c: c["state"].update(partial_bad=[False]),
        "its state's partial_bad holds something other than image indices",
    ),
    "history of numbers": (
        lambda c: c["state"].update(history=[1, 2]),
        "its metrics history is not a list of rows",
    ),
    "history without epochs": (
        lambda c: c["state"].pop("epoch"),
        "its metrics history has 2 rows for 0 epochs",
    ),
    "history too short": (
        lambda c: c["state"].update(history=[{}]),
        "its metrics history has 1 rows for 2 epochs",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_each_kind_of_damage_is_one_line_naming_it(damage, tmp_path):
    _, _, ckpt = saved(tmp_path)
    change, problem = DAMAGE[damage]
    ckpt = copy.deepcopy(ckpt)
    change(ckpt)
    write_checkpoint(tmp_path / "checkpoint.pt", ckpt)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert (
        str(e.value)
        == f"{path} is a damaged resnetlab checkpoint ({problem}); resume from another copy or start again"
    )


def test_defaults_and_edge_values_of_a_sound_checkpoint_load(tmp_path):
    _, _, ckpt = saved(tmp_path)
    for change in (
        lambda c: c["state"].update(
            epoch=3, history=[{}, {}, {}]
        ),  # the last epoch: not past the end
        lambda c: c["state"].update(train_seconds=1, best_val_acc=0.5, bad_images=[0]),
        lambda c: [c["state"].pop(k) for k in ("epoch", "history", "best_epoch", "partial")],
        lambda c: c.update(average={"a": torch.zeros(1)}, average_updates=0),
        lambda c: c["config"].update(epochs="3"),  # the configuration's own check names that
    ):
        edited = copy.deepcopy(ckpt)
        change(edited)
        write_checkpoint(tmp_path / "checkpoint.pt", edited)
        assert load_checkpoint(tmp_path)["state"] == edited["state"]


def test_what_is_not_a_resnetlab_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    assert (
        str(e.value)
        == f"no checkpoint at {path}; --resume takes the folder of a run that saved at least one epoch"
    )
    path.write_bytes(b"not a zip")
    try:
        torch.load(path, weights_only=True)
    except Exception as e:  # torch's own words: the message keeps their first line
        cause = first_line(e)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == (
        f"{path} is not a readable resnetlab checkpoint ({cause}); it may be truncated or foreign"
    )
    foreign = f"{path} is not a resnetlab checkpoint (version 1); it was written by another program"
    for content in ([1], {"version": 2, "config": {}}, {"version": 1}, {"config": {}}):
        torch.save(content, path)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert str(e.value) == foreign


def test_a_run_resumes_with_its_own_process_count_unless_streamed():
    check_resume_world_size(2, DistInfo(0, 2), "RUN")
    check_resume_world_size(2, DistInfo(0, 3), "RUN", elastic=True)
    with pytest.raises(UsageError) as e:
        check_resume_world_size(2, DistInfo(0, 1), "RUN")
    assert e.value.shared and str(e.value) == (
        "RUN was trained with 2 processes, this launch has 1; resume it with the same count: "
        "resnetlab train --nproc 2 --resume RUN (or torchrun with 2 processes in all)"
    )
    with pytest.raises(UsageError) as e:
        check_resume_world_size(1, DistInfo(0, 2), "RUN")
    assert str(e.value) == (
        "RUN was trained with 1 process, this launch has 2; resume it with the same count: "
        "resnetlab train --resume RUN"
    )


# -- the data a run was trained on, for a resume to check ----------------------------------------


def test_the_data_versions_are_saved_as_given(tmp_path):
    model, optimizer = parts()
    state = TrainState(epoch=1, global_step=3, history=[{"epoch": 1}])
    args = (make_config(epochs=3), model, optimizer, state, 1)
    bare = make_checkpoint(*args)
    assert not {"data", "train_split", "test_split"} & set(bare)
    versions = {"train_split": "d1g3st", "test_split": "t3st"}
    both = make_checkpoint(*args, identity=versions)
    assert {k: both[k] for k in versions} == versions
    write_checkpoint(tmp_path / "checkpoint.pt", both)
    assert {k: load_checkpoint(tmp_path)[k] for k in versions} == versions
