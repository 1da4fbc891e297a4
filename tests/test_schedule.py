import pytest

from fabricmetrics import Schedule
from fabricmetrics.exceptions import ConfigurationError
from fabricmetrics.schedule import default_schedule


def test_periods_fire_on_multiples():
    s = Schedule(every_n_steps=3, every_n_epochs=2)
    assert [n for n in range(1, 10) if s.logs_step(n)] == [3, 6, 9]
    assert [n for n in range(1, 7) if s.logs_epoch(n)] == [2, 4, 6]


def test_none_never_fires():
    s = Schedule(every_n_steps=None, every_n_epochs=None)
    assert not any(s.logs_step(n) or s.logs_epoch(n) for n in range(1, 100))


@pytest.mark.parametrize("field", ["every_n_steps", "every_n_epochs"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_non_positive_or_non_int_periods_are_errors(field, bad):
    with pytest.raises(ConfigurationError, match=f"{field}=.*positive int.*{field}=None"):
        Schedule(**{field: bad})


def test_per_step_must_be_bool():
    with pytest.raises(ConfigurationError, match="per_step"):
        Schedule(per_step=1)  # type: ignore[arg-type]


def test_defaults_follow_the_contract():
    assert default_schedule("train") == Schedule(every_n_steps=50, every_n_epochs=1, per_step=True)
    for stage in ("val", "test", "anything"):
        assert default_schedule(stage) == Schedule(every_n_steps=None, every_n_epochs=1, per_step=False)
