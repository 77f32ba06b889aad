"""What the fit's typed results share: frozen pydantic models that read a stored fit back leniently
(keys a later version added are optional, keys it dropped are ignored), and floats that JSON stores as
null where they are not finite (JSON has neither inf nor nan) and that read back as nan."""
from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True, populate_by_name=True)


Real = Annotated[float, BeforeValidator(lambda value: math.nan if value is None else value)]
