"""The platform's demo image, ``demo/hello:latest`` in the embedded registry: busybox httpd serving
one page on port {HTTPD_PORT}. ``scripts/run`` pushes it (``manage.py push_demo_image``); the
Deploy form suggests it."""

from __future__ import annotations

from pathlib import Path

from tenants.oci_build import BASE_APPLETS, ImageFile, ImageRecipe, PushedImage, build_and_push

HTTPD_PORT = 8080

HTTPD_INDEX_HTML = "<html><body><h1>Hello from a HyperVM</h1></body></html>\n"

DEMO_REFERENCE_PATH = "demo/hello:latest"

DEMO_RECIPE = ImageRecipe(
    name="httpd",
    files=(ImageFile("/www/index.html", HTTPD_INDEX_HTML.encode()),),
    applets=(*BASE_APPLETS, "httpd"),
    entrypoint=("/bin/httpd", "-f", "-p", str(HTTPD_PORT), "-h", "/www"),
    exposed_ports=(f"{HTTPD_PORT}/tcp",),
    working_dir="/www",
)


def push_demo_image(*, registry: str, authfile: Path, cache_dir: Path, tls_verify: bool = False) -> PushedImage:
    """Builds (or reuses) the demo image and pushes it as DEMO_REFERENCE_PATH only."""
    return build_and_push(
        DEMO_RECIPE,
        cache_dir=cache_dir,
        registry=registry,
        authfile=authfile,
        tls_verify=tls_verify,
        repository_tag=DEMO_REFERENCE_PATH,
    )
