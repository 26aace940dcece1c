"""What the lab accepts from its callers (the API, the CLI, the tests):
validated requests, whose fields are also the API's request bodies."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from ..model.spec import Guest, SafeStr

MAX_ARG = 4096
MAX_ARGV = 16384
# A recipe name: no '/', not starting with '.', no control characters (the
# JSON schema's form of AddGuest._recipe_only).
RECIPE_NAME_PATTERN = r"^[^/.\x00-\x1f\x7f-\x9f][^/\x00-\x1f\x7f-\x9f]*$"



def _arg_length(value: str) -> str:
    if len(value) > MAX_ARG:
        raise ValueError(f"an argument is longer than {MAX_ARG} characters")
    return value


Arg = Annotated[SafeStr, AfterValidator(_arg_length), Field(json_schema_extra={"maxLength": MAX_ARG})]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkRequest(_Body):
    """New IPv4 settings for a guest. The address must be in the bridge's subnet."""

    ip: ipaddress.IPv4Address = Field(examples=["10.198.101.50"])
    prefix: int | None = Field(default=None, ge=8, le=30, description="default: the bridge's prefix length")
    gateway: ipaddress.IPv4Address | None = Field(default=None, description="default: the bridge address")
    dns: list[ipaddress.IPv4Address] = Field(default_factory=list, max_length=3)


class ExecRequest(_Body):
    argv: list[Arg] = Field(
        min_length=1, max_length=256, examples=[["uname", "-a"]],
        description=f"the command and its arguments; each is shell-quoted, never interpreted by a shell (use "
                    f"[\"sh\", \"-c\", ...] for that). At most {MAX_ARGV} characters in all (422 beyond)")
    timeout: float = Field(default=60.0, gt=0, le=3600)
    max_output: int = Field(default=65536, ge=1, le=1 << 20, description="bytes of output kept")

    @field_validator("argv")
    @classmethod
    def _arg_length(cls, v: list[str]) -> list[str]:
        if sum(len(a) for a in v) > MAX_ARGV:
            raise ValueError(f"arguments too long ({MAX_ARGV} characters in all)")
        return v


class AddGuest(Guest):
    """A guest added at runtime. Same fields as in the lab file, except that
    the image must be a recipe name and qemu_args are not accepted over the API."""

    image: SafeStr = Field(min_length=1, json_schema_extra={"pattern": RECIPE_NAME_PATTERN},
                           description="a recipe name (`bridgelab image list`); 422 if it is not built")
    qemu_args: list[SafeStr] = Field(default_factory=list, json_schema_extra={"maxItems": 0},
                                     description="only in the lab file")

    @field_validator("image")
    @classmethod
    def _recipe_only(cls, v: str) -> str:
        if "/" in v or v.startswith("."):
            raise ValueError("over the API, image must be a recipe name (a path is only allowed in the lab file)")
        return v

    @field_validator("qemu_args")
    @classmethod
    def _no_qemu_args(cls, v: list[str]) -> list[str]:
        if v:
            raise ValueError("qemu_args can only be set in the lab file")
        return v


__all__ = ["AddGuest", "ExecRequest", "NetworkRequest"]
