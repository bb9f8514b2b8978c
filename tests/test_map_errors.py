"""``map()`` with an item it cannot submit: the items before it are yielded,
then its error is raised at its turn, naming the item; nothing after it is
read, and no task or shared memory is left behind."""

from __future__ import annotations

import numpy as np
import pytest

from farm import Farm, InvalidInputError
from tests.onnx_models import affine_model
from tests.processes import wait_until

pytestmark = pytest.mark.timeout(60)

SHAPE = (64, 128)  # 32 KiB of float32: through shared memory, not the task header


@pytest.fixture
def farm(tmp_path):
    with Farm(affine_model(str(tmp_path), shape=SHAPE), schedule="0,1") as f:
        yield f


def feeds(bad_at: int, count: int, read: list):
    """``count`` feeds of value i, the one at ``bad_at`` of a wrong shape; ``read`` records each one read."""
    for i in range(count):
        read.append(i)
        shape = (3, 3) if i == bad_at else SHAPE
        yield {"x": np.full(shape, i, np.float32)}


def outcome_of(iterator) -> tuple[list, BaseException]:
    """The values ``iterator`` yields, and the error that ends it."""
    values = []
    with pytest.raises(Exception) as caught:
        for outputs in iterator:
            values.append(float(outputs[0][0, 0]))
    return values, caught.value


def no_task_left(farm: Farm) -> bool:
    wait_until(lambda: farm._router.books.outstanding == 0, check=False)
    return farm._router.books.outstanding == 0


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_the_items_before_a_bad_one_are_yielded_then_its_error_names_it(farm, ordered):
    read: list = []
    values, error = outcome_of(farm.map(feeds(3, 6, read), ordered=ordered))
    assert sorted(values) == [1.0, 3.0, 5.0]  # 2 * i + 1 for items 0, 1, 2
    assert isinstance(error, InvalidInputError)
    assert str(error).startswith("map item 3: Input 'x' shape mismatch: expected [64, 128], got [3, 3]")
    assert read == [0, 1, 2, 3], "an item after the bad one was read"
    assert no_task_left(farm)


def test_a_bad_first_item_raises_at_once(farm):
    values, error = outcome_of(farm.map(feeds(0, 3, [])))
    assert values == [] and str(error).startswith("map item 0: Input 'x'")


def test_a_bad_item_keeps_the_bound_on_work_in_flight_and_the_farm_serves_on(farm):
    read: list = []
    values, error = outcome_of(farm.map(feeds(10, 20, read), max_in_flight=2))
    assert values == [2.0 * i + 1 for i in range(10)] and str(error).startswith("map item 10:")
    assert read == list(range(11))
    assert no_task_left(farm)
    (y,) = farm.run({"x": np.ones(SHAPE, np.float32)})
    assert np.all(y == 3)
