"""Keep ``scheduler.__all__`` honest."""

import scheduler


def test_all_is_sorted_and_complete() -> None:
    """Every name in __all__ exists, the list is sorted, and no public name is left out."""
    assert list(scheduler.__all__) == sorted(scheduler.__all__)
    for name in scheduler.__all__:
        assert hasattr(scheduler, name), name
    public = {
        name
        for name, value in vars(scheduler).items()
        if not name.startswith("_") and not isinstance(value, type(scheduler))
    }
    assert public == set(scheduler.__all__)
