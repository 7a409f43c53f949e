import django_filters

from tenants.models import ImageRegistry, Membership, Tenant


class TenantFilterSet(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", label="slug or name contains")

    class Meta:
        model = Tenant
        fields = ["slug"]

    def search(self, queryset, name, value):
        from django.db.models import Q

        return queryset.filter(Q(slug__icontains=value) | Q(name__icontains=value))


class MembershipFilterSet(django_filters.FilterSet):
    username = django_filters.CharFilter(field_name="user__username", lookup_expr="icontains")

    class Meta:
        model = Membership
        fields = ["role", "username"]


class ImageRegistryFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = ImageRegistry
        fields = ["name", "insecure"]
