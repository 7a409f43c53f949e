"""Who calls the Marathon API, and for which tenant.

Contract: Marathon clients know nothing of tenants, so the tenant comes from the credentials:
* an API token (``Authorization: Token <t>`` or ``Authorization: token=<t>``) pinned to a
  tenant acts in that tenant;
* an unpinned token, or a browser session, acts in the user's only tenant (a session may also
  use the tenant chosen in the portal's tenant switcher);
* anything else is a 403 asking for a pinned token.
The role check itself is ``tenants.access``: this module only picks the slug and hands it to
``tenant_access_resolve``, the one authorization rule.
"""

from __future__ import annotations

from django.middleware.csrf import CsrfViewMiddleware

from portal.api.marathon.errors import MarathonApiError
from tenants.access import TenantAccess, tenant_access_resolve
from tenants.authentication import ApiTokenAuthentication
from tenants.context_processors import SESSION_TENANT_KEY
from tenants.models import ApiToken, Membership

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NOT_AUTHENTICATED_MESSAGE = "Authentication required: send 'Authorization: Token <api-token>'."
PINNED_TOKEN_MESSAGE = (
    "This user is a member of {memberships}, so the Marathon API cannot tell which tenant is meant: "
    "use an API token pinned to one tenant."
)


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason


def _csrf_failure(request) -> str | None:
    check = _CsrfCheck(lambda _request: None)
    check.process_request(request)
    return check.process_view(request, None, (), {})


def marathon_access_resolve(request) -> TenantAccess:
    """The caller's access to the tenant its credentials name; raises a Marathon API error."""
    authenticated = ApiTokenAuthentication().authenticate(request)
    if authenticated is not None:
        user, token = authenticated
    elif request.user.is_authenticated:
        user, token = request.user, None
        if request.method not in SAFE_METHODS and (reason := _csrf_failure(request)):
            raise MarathonApiError(403, f"CSRF check failed for a session request: {reason}")
    else:
        raise MarathonApiError(401, NOT_AUTHENTICATED_MESSAGE)
    slug = _tenant_slug(user=user, token=token, session_slug=_session_tenant_slug(request, token))
    request.marathon_token = token  # None for the session: a stream re-checks what it was opened with
    return tenant_access_resolve(user=user, slug=slug, token=token)


def _session_tenant_slug(request, token: ApiToken | None) -> str | None:
    if token is not None or not hasattr(request, "session"):
        return None
    return request.session.get(SESSION_TENANT_KEY)


def _tenant_slug(*, user, token: ApiToken | None, session_slug: str | None) -> str:
    if token is not None and token.tenant_id is not None:
        return token.tenant.slug
    if session_slug:
        return session_slug
    slugs = list(Membership.objects.filter(user=user).values_list("tenant__slug", flat=True)[:2])
    if len(slugs) == 1:
        return slugs[0]
    memberships = "no tenant" if not slugs else "several tenants"
    raise MarathonApiError(403, PINNED_TOKEN_MESSAGE.format(memberships=memberships))
