"""Database models of the auth service (Postgres schema ``auth``)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from libs.db import TYPE_ANNOTATION_MAP, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("auth")
    type_annotation_map = TYPE_ANNOTATION_MAP
