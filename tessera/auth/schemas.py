"""Request and response shapes of the auth, token and user routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Role = Literal["admin", "marketer", "sales", "support", "analyst"]


class LoginIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=512)


class UserOut(BaseModel):
    id: int
    email: str
    role: Role
    active: bool
    created_at: datetime


class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str = Field(description="Send it as X-CSRF-Token on state-changing requests.")
    expires_at: datetime


class MeOut(BaseModel):
    kind: Literal["token", "user"]
    id: int
    name: str
    role: Role
    permissions: list[str]


class ResetIn(BaseModel):
    token: str = Field(max_length=200)
    password: str = Field(max_length=512)


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str = Field(description="The token's first characters, to recognise it.")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself. Shown only in this response.")


class UserIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=512)
    role: Role


class UserPatch(BaseModel):
    role: Role | None = None
    active: bool | None = None
