from django.db import models

from tenants.models.tenant import Tenant, TenantScopedQuerySet


class ImageRegistry(models.Model):
    """A registry a tenant pulls from. The password is stored only as Fernet ciphertext
    (see tenants.crypto); nothing reads it back except the worker that pulls."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="registries")
    name = models.CharField(max_length=64)
    url = models.CharField(max_length=255)
    username = models.CharField(max_length=128, blank=True)
    password_encrypted = models.BinaryField(blank=True, default=b"", editable=False)
    insecure = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_ok = models.BooleanField(null=True)
    last_check_message = models.CharField(max_length=255, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="registry_unique_name")]
        verbose_name_plural = "image registries"

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"

    @property
    def has_password(self) -> bool:
        return bool(self.password_encrypted)

    def pull_password(self) -> str:
        """Decrypted for a pull or a check, in the worker only."""
        from tenants.crypto import secret_decrypt

        return secret_decrypt(self.password_encrypted) if self.has_password else ""

    @property
    def host(self) -> str:
        """host[:port] as it appears in image references."""
        return self.url.split("://", 1)[-1].rstrip("/")
