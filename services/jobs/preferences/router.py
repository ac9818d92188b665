"""Routes of notification preferences: ``/v1/notifications/preferences``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from libs.db import SessionDep
from libs.identity import PrincipalDep, require_scope
from libs.permissions import Scope
from services.jobs.preferences.schemas import (
    OrgPreferencesIn,
    OrgPreferencesOut,
    PreferencesIn,
    PreferencesOut,
)
from services.jobs.preferences.service import PreferenceService

router = APIRouter(prefix="/v1/notifications/preferences", tags=["notification preferences"])
READ = [require_scope(Scope.JOBS_READ)]
ADMIN = [require_scope(Scope.ADMIN)]


async def get_preference_service(session: SessionDep, principal: PrincipalDep) -> PreferenceService:
    return PreferenceService(session, principal)


PreferenceServiceDep = Annotated[PreferenceService, Depends(get_preference_service)]


@router.get(
    "",
    response_model=PreferencesOut,
    summary="My channels per kind (what I get here), digest frequency, mail language",
    dependencies=READ,
)
async def get_preferences(service: PreferenceServiceDep) -> object:
    return await service.view()


@router.put(
    "",
    response_model=PreferencesOut,
    summary="Choose channels per kind (in_app, email, digest, none), digest and language",
    dependencies=READ,
)
async def put_preferences(body: PreferencesIn, service: PreferenceServiceDep) -> object:
    return await service.update(body.kinds, body.digest, body.language)


@router.get(
    "/organization",
    response_model=OrgPreferencesOut,
    summary="The organization's default channels for its members",
    dependencies=ADMIN,
)
async def get_org_preferences(service: PreferenceServiceDep) -> object:
    return await service.org_view()


@router.put(
    "/organization",
    response_model=OrgPreferencesOut,
    summary="Set the organization's default channels per kind (members' own choices win)",
    dependencies=ADMIN,
)
async def put_org_preferences(body: OrgPreferencesIn, service: PreferenceServiceDep) -> object:
    return await service.org_update(body.kinds)
