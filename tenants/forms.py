from django import forms

from tenants.choices import QuotaResource, TenantRole
from tenants.models.quota import QUOTA_MAXIMUM


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=254, label="Username or email")
    role = forms.ChoiceField(choices=TenantRole.choices, initial=TenantRole.DEVELOPER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=TenantRole.choices)


class RegistryForm(forms.Form):
    name = forms.CharField(max_length=64)
    url = forms.CharField(max_length=255, label="URL", help_text="https://host[:port] (http:// only for loopback)")
    username = forms.CharField(max_length=128, required=False)
    password = forms.CharField(max_length=1024, required=False, widget=forms.PasswordInput, strip=False)
    insecure = forms.BooleanField(required=False, help_text="plain HTTP / unverified TLS, loopback only")


class TenantCreateForm(forms.Form):
    slug = forms.CharField(max_length=40)
    name = forms.CharField(max_length=100)
    owner = forms.CharField(max_length=150, required=False, help_text="username of the first owner")


class QuotaForm(forms.Form):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for resource in QuotaResource:
            self.fields[resource.value] = forms.IntegerField(
                label=resource.label, min_value=0, max_value=QUOTA_MAXIMUM[resource]
            )


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=64)
    tenant = forms.CharField(max_length=40, required=False, help_text="optional: pin to one tenant (slug)")
