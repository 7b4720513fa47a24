"""One error base: every error the user can fix is a MoEEError, found even when wrapped."""

import pytest

from moee.data.media import MediaError
from moee.data.shards import ShardError
from moee.emotions import EmotionSpecError, parse_emotion
from moee.errors import BadInputError, MoEEError, one_line, user_error_within
from moee.inference.portrait import InputError
from moee.models.pretrained import MissingWeightsError
from moee.models.weights import MissingCheckpointError, StageWeightsError
from moee.stages.guard import NonFiniteTrainingError, NonFiniteWeightsError
from moee.utils import WriteError

USER_ERRORS = {  # each keeps the builtin base that callers and libraries already catch
    MissingCheckpointError: FileNotFoundError, MissingWeightsError: FileNotFoundError,
    StageWeightsError: ValueError, ShardError: ValueError, NonFiniteWeightsError: ValueError,
    NonFiniteTrainingError: RuntimeError, WriteError: OSError,
    EmotionSpecError: ValueError, InputError: ValueError, MediaError: ValueError,
}


@pytest.mark.parametrize("kind", list(USER_ERRORS), ids=lambda kind: kind.__name__)
def test_every_user_error_is_one_base_and_keeps_its_builtin_one(kind):
    assert issubclass(kind, MoEEError) and issubclass(kind, USER_ERRORS[kind])
    per_job = kind in (EmotionSpecError, InputError, MediaError)  # a batch skips that job
    assert issubclass(kind, BadInputError) == per_job


def test_a_user_error_is_found_inside_a_wrapping_error_and_bugs_are_not():
    with pytest.raises(EmotionSpecError) as raised:
        parse_emotion("gleeful")
    try:
        try:
            raise raised.value
        except Exception as error:  # what jsonargparse does with a failing constructor
            raise ValueError("Does not validate against any of the types") from error
    except ValueError as wrapped:
        assert user_error_within(wrapped) is raised.value
    assert user_error_within(KeyError("a bug")) is None
    assert one_line(MoEEError("two\n  lines")) == "two lines"
