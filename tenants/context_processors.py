from tenants.selectors import tenant_list

SESSION_TENANT_KEY = "current_tenant"


def tenant_switcher(request):
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    resolver = getattr(request, "resolver_match", None)
    current = (resolver.kwargs.get("tenant_slug") if resolver else None) or request.session.get(SESSION_TENANT_KEY)
    return {"switcher_tenants": tenant_list(user=request.user), "current_tenant_slug": current}
