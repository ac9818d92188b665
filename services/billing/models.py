"""Database models of the billing service (Postgres schema ``billing``)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from libs.db import TYPE_ANNOTATION_MAP, service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("billing")
    type_annotation_map = TYPE_ANNOTATION_MAP
