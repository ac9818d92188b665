"""Routes of organizations, their members and invites."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from services.auth.core.context import ContextDep
from services.auth.core.schemas import TokenIn
from services.auth.orgs.schemas import (
    InviteCreate,
    InviteOut,
    MemberList,
    MemberOut,
    OrgCreate,
    OrgList,
    OrgOut,
    RoleChange,
)
from services.auth.orgs.service import OrgService


async def get_org_service(ctx: ContextDep) -> OrgService:
    return OrgService(ctx)


OrgServiceDep = Annotated[OrgService, Depends(get_org_service)]

router = APIRouter(prefix="/v1/orgs", tags=["organizations"])
internal = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)


@internal.get("/orgs/{org_id}/recipients", response_model=None)
async def recipients(
    org_id: uuid.UUID,
    svc: OrgServiceDep,
    role: Annotated[list[str] | None, Query(max_length=8)] = None,
    user_id: Annotated[list[uuid.UUID] | None, Query(max_length=100)] = None,
) -> dict[str, object]:
    """Members of the organization with one of the roles or among the users (services only:
    the jobs service's notification fan-out)."""
    return await svc.recipients(org_id, role or [], user_id or [])


@internal.get("/users/{user_id}/contact", response_model=None)
async def contact(user_id: uuid.UUID, svc: OrgServiceDep) -> dict[str, object]:
    """A user's address for an account notice (services only; 404 for an unknown user)."""
    return await svc.contact(user_id)


@router.get("", response_model=OrgList, summary="Organizations I belong to")
async def list_orgs(svc: OrgServiceDep) -> object:
    return {"data": await svc.list_orgs()}


@router.post("", status_code=201, response_model=OrgOut, summary="Create an organization")
async def create_org(body: OrgCreate, svc: OrgServiceDep) -> object:
    return await svc.create_org(body.name)


@router.post("/invites/accept", response_model=OrgOut, summary="Join an organization by invite")
async def accept_invite(body: TokenIn, svc: OrgServiceDep) -> object:
    return await svc.accept_invite(body.token)


@router.get("/{org_id}", response_model=OrgOut, summary="One organization")
async def get_org(org_id: uuid.UUID, svc: OrgServiceDep) -> object:
    return await svc.get_org(org_id)


@router.get("/{org_id}/members", response_model=MemberList, summary="Members")
async def list_members(
    org_id: uuid.UUID,
    svc: OrgServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> object:
    return await svc.list_members(org_id, limit, offset)


@router.patch("/{org_id}/members/{user_id}", response_model=MemberOut, summary="Change a role")
async def change_role(
    org_id: uuid.UUID, user_id: uuid.UUID, body: RoleChange, svc: OrgServiceDep
) -> object:
    return await svc.change_role(org_id, user_id, body.role)


@router.delete("/{org_id}/members/{user_id}", status_code=204, summary="Remove a member (or leave)")
async def remove_member(org_id: uuid.UUID, user_id: uuid.UUID, svc: OrgServiceDep) -> Response:
    await svc.remove_member(org_id, user_id)
    return Response(status_code=204)


@router.post(
    "/{org_id}/invites", status_code=201, response_model=InviteOut, summary="Invite by email"
)
async def invite(org_id: uuid.UUID, body: InviteCreate, svc: OrgServiceDep) -> object:
    return await svc.invite(org_id, body)


@router.get("/{org_id}/invites", response_model=list[InviteOut], summary="Pending invites")
async def list_invites(org_id: uuid.UUID, svc: OrgServiceDep) -> object:
    return await svc.list_invites(org_id)


@router.delete("/{org_id}/invites/{invite_id}", status_code=204, summary="Withdraw an invite")
async def revoke_invite(org_id: uuid.UUID, invite_id: uuid.UUID, svc: OrgServiceDep) -> Response:
    await svc.revoke_invite(org_id, invite_id)
    return Response(status_code=204)
