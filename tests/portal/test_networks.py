"""Tenant networks and the IPAM, on real PostgreSQL: subnets per tenant, addresses under the
network row lock (racing connections), freed when the instance ends, clear errors when full."""

import ipaddress
import threading

import pytest
from django.db import close_old_connections, connection, transaction

from portal.choices import InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import App, AppVersion, ComputeHost, Instance, Network, NetworkAllocation
from portal.services import apps as app_services
from portal.services.deployments import app_converge
from portal.services.instances import instance_transition
from portal.services.networks import (
    NETWORK_CLAIM_KIND,
    NetworkFull,
    network_address_allocate,
    network_address_release,
    network_ensure,
    network_name_for,
    network_remove_unused,
)
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.errors import QuotaExceeded
from tenants.models import Quota, ResourceClaim
from tenants.selectors import quota_usage
from tests.support.portal_fixtures import compute_host_create
from tests.tenants.factories import MembershipFactory, TenantFactory

APP = {"id": "/web", "cmd": "sleep 3600", "cpus": 0.1, "mem": 64, "container": {"docker": {"image": "demo/h:1"}}}


def make_instance(tenant, app_id="/web") -> Instance:
    app = App.objects.create(tenant=tenant, marathon_id=app_id)
    version = AppVersion.objects.create(app=app, version="v1", definition=parse_app_definition(APP).to_stored())
    App.objects.filter(pk=app.pk).update(current_version=version)
    return Instance.objects.create(tenant=tenant, app=app, version=version, vcpus=1, memory_mib=128)


def host_up(name: str) -> ComputeHost:
    return compute_host_create(name, memory_mib=8192)


@pytest.mark.django_db
def test_a_tenants_networks_get_distinct_subnets_and_a_quota_claim_each(tenant, other_tenant):
    default = network_ensure(tenant=tenant, name="default")
    backend = network_ensure(tenant=tenant, name="backend")
    again = network_ensure(tenant=tenant, name="default")
    theirs = network_ensure(tenant=other_tenant, name="default")
    assert (default.subnet, backend.subnet, again.pk, theirs.subnet) == (
        "10.1.0.0/24",
        "10.2.0.0/24",
        default.pk,
        "10.1.0.0/24",  # another tenant's segment: isolated, so the same subnet is fine
    )
    assert theirs.pk != default.pk
    assert sorted(
        ResourceClaim.objects.filter(tenant=tenant, owner_kind=NETWORK_CLAIM_KIND).values_list("owner_id", flat=True)
    ) == sorted([str(default.pk), str(backend.pk)])
    assert quota_usage(tenant=tenant)["networks"] == 2


@pytest.mark.django_db
def test_a_network_over_the_tenants_quota_is_refused_and_nothing_is_written(tenant):
    Quota.objects.filter(tenant=tenant).update(networks=1)
    network_ensure(tenant=tenant, name="default")
    with pytest.raises(QuotaExceeded) as excinfo, transaction.atomic():
        network_ensure(tenant=tenant, name="backend")
    assert excinfo.value.resource == "networks"
    assert list(Network.objects.filter(tenant=tenant).values_list("name", flat=True)) == ["default"]


@pytest.mark.django_db
def test_addresses_are_the_lowest_free_ones_kept_on_retry_and_freed_for_reuse(tenant):
    network = network_ensure(tenant=tenant, name="default")
    first, second, third = (make_instance(tenant, f"/a{i}") for i in range(3))
    a = network_address_allocate(instance=first, network=network)
    b = network_address_allocate(instance=second, network=network)
    retried = network_address_allocate(instance=first, network=network)
    network_address_release(instance_id=first.pk)
    c = network_address_allocate(instance=third, network=network)
    assert (a.address, b.address, retried.pk, c.address) == ("10.1.0.1", "10.1.0.2", a.pk, "10.1.0.1")


@pytest.mark.django_db
def test_a_full_network_says_so_and_allocates_nothing(tenant):
    network = Network.objects.create(tenant=tenant, name="tiny", subnet="10.9.0.0/29")  # 6 host addresses
    holders = [make_instance(tenant, f"/h{i}") for i in range(7)]
    for holder in holders[:6]:
        network_address_allocate(instance=holder, network=network)
    with pytest.raises(NetworkFull) as excinfo, transaction.atomic():
        network_address_allocate(instance=holders[6], network=network)
    assert "Network 'tiny' (10.9.0.0/29) has no free address: all 6 are held" in excinfo.value.message
    assert excinfo.value.status_code == 409
    assert NetworkAllocation.objects.filter(network=network).count() == 6


@pytest.mark.django_db
def test_a_network_in_use_cannot_go_alone_but_goes_with_its_tenant(tenant):
    from django.db.models import RestrictedError

    network = network_ensure(tenant=tenant, name="default")
    network_address_allocate(instance=make_instance(tenant), network=network)
    with pytest.raises(RestrictedError), transaction.atomic():
        network.delete()
    tenant.delete()
    assert not Network.objects.filter(pk=network.pk).exists()
    assert not NetworkAllocation.objects.filter(network_id=network.pk).exists()


@pytest.mark.django_db
def test_the_address_is_freed_when_the_instance_ends(tenant):
    network = network_ensure(tenant=tenant, name="default")
    instance = make_instance(tenant)
    network_address_allocate(instance=instance, network=network)
    instance_transition(instance_id=instance.pk, to=InstanceStatus.STOPPING)
    still_held = NetworkAllocation.objects.filter(instance=instance).exists()
    instance_transition(instance_id=instance.pk, to=InstanceStatus.STOPPED)
    assert (still_held, NetworkAllocation.objects.filter(instance=instance).exists()) == (True, False)


@pytest.mark.django_db(transaction=True)
def test_concurrent_allocations_never_hand_out_one_address_twice():
    """Eight connections allocate on one network at once (a barrier lines them up); without the
    network row lock they would all read the same free address."""
    tenant = TenantFactory()
    network = network_ensure(tenant=tenant, name="default")
    instances = [make_instance(tenant, f"/r{i}") for i in range(8)]
    barrier = threading.Barrier(len(instances), timeout=20)
    addresses: dict[str, str] = {}
    failures: list[BaseException] = []

    def contender(instance):
        try:
            with transaction.atomic():
                barrier.wait()
                allocation = network_address_allocate(instance=instance, network=network)
                connection.cursor().execute("SELECT pg_sleep(0.05)")  # hold the lock: truly overlap
            addresses[str(instance.pk)] = allocation.address
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=contender, args=(instance,)) for instance in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert sorted(addresses.values(), key=ipaddress.IPv4Address) == [f"10.1.0.{n}" for n in range(1, 9)]


@pytest.mark.django_db(transaction=True)
def test_two_first_deploys_racing_make_one_default_network():
    tenant = TenantFactory()
    barrier = threading.Barrier(2, timeout=20)
    made: list[str] = []

    def contender():
        try:
            with transaction.atomic():
                barrier.wait()
                made.append(str(network_ensure(tenant=tenant, name="default").pk))
                connection.cursor().execute("SELECT pg_sleep(0.1)")
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=contender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert (len(made), len(set(made)), Network.objects.filter(tenant=tenant).count()) == (2, 1, 1)
    assert quota_usage(tenant=tenant)["networks"] == 1


@pytest.mark.parametrize(
    ("networks", "expected"),
    [
        (None, "default"),
        ([{"mode": "container/bridge"}], "default"),
        ([{"mode": "container"}], "default"),
        ([{"mode": "container", "name": "backend"}], "backend"),
    ],
)
def test_which_network_an_app_joins(networks, expected):
    body = {**APP, **({"networks": networks} if networks is not None else {})}
    assert network_name_for(parse_app_definition(body)) == expected


@pytest.mark.django_db
def test_a_deployed_instance_gets_its_address_at_placement_and_shows_it(tenant):
    host_up("host-n")
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    body = {**APP, "instances": 2, "networks": [{"mode": "container", "name": "backend"}]}
    app = app_services.app_create(access=access, definition=parse_app_definition(body)).app
    placed = sorted(app.instances.values_list("ip_address", flat=True), key=ipaddress.IPv4Address)
    allocations = sorted(
        NetworkAllocation.objects.filter(instance__app=app).values_list("network__name", "address"),
    )
    assert placed == ["10.1.0.1", "10.1.0.2"]
    assert allocations == [("backend", "10.1.0.1"), ("backend", "10.1.0.2")]


@pytest.mark.django_db
def test_a_deploy_needing_a_network_over_quota_is_refused_and_stores_nothing(tenant):
    Quota.objects.filter(tenant=tenant).update(networks=0)
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    with pytest.raises(QuotaExceeded):
        app_services.app_create(access=access, definition=parse_app_definition(APP))
    assert (App.objects.filter(tenant=tenant).count(), Network.objects.filter(tenant=tenant).count()) == (0, 0)


@pytest.mark.django_db
def test_networks_no_app_uses_are_removed_with_their_claims_and_busy_ones_stay(tenant):
    kept_by_app = network_ensure(tenant=tenant, name="default")
    make_instance(tenant)  # its app's definition joins "default"
    unused = network_ensure(tenant=tenant, name="old")
    held = network_ensure(tenant=tenant, name="draining")  # no app joins it, one instance still holds an address
    network_address_allocate(instance=make_instance(tenant, "/draining"), network=held)

    removed = network_remove_unused(tenant=tenant)

    assert removed == [unused.name]
    assert sorted(Network.objects.filter(tenant=tenant).values_list("name", flat=True)) == ["default", "draining"]
    assert quota_usage(tenant=tenant)["networks"] == 2
    assert kept_by_app.pk in set(Network.objects.values_list("pk", flat=True))


@pytest.mark.django_db
def test_the_network_an_app_left_goes_when_its_deployment_finishes(tenant):
    user = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    access = tenant_access_resolve(user=user, slug=tenant.slug)
    on_a = parse_app_definition({**APP, "instances": 0, "networks": [{"mode": "container", "name": "a"}]})
    app = app_services.app_create(access=access, definition=on_a).app
    app_converge(app_id=app.pk)  # nothing to start: the deployment finishes at once
    before = list(Network.objects.filter(tenant=tenant).values_list("name", flat=True))

    on_b = parse_app_definition({**APP, "instances": 0, "networks": [{"mode": "container", "name": "b"}]})
    app_services.app_update(access=access, app=app, definition=on_b)
    app_converge(app_id=app.pk)

    assert (before, list(Network.objects.filter(tenant=tenant).values_list("name", flat=True))) == (["a"], ["b"])
    assert quota_usage(tenant=tenant)["networks"] == 1


@pytest.mark.django_db(transaction=True)
def test_placing_on_a_new_network_while_first_deploys_make_it_does_not_deadlock(monkeypatch):
    """Lock order quota -> network -> hosts everywhere. A waiting instance placed again (the
    converge of a scale) on a network nobody made yet, while two first deploys of that network
    run: the placement holds the host rows a while (held on purpose, so the two sides overlap).
    Hosts-before-quota there made PostgreSQL abort one side with a deadlock."""
    from portal.services import deployments

    tenant = TenantFactory()
    Quota.objects.filter(tenant=tenant).update(instances=10, vcpus=10, memory_mib=10_000)
    host_up("host-lock")
    # Only host-lock may take them: the session's live-stack hosts (if any) must not.
    on_fresh = {
        **APP,
        "networks": [{"mode": "container", "name": "fresh"}],
        "constraints": [["hostname", "CLUSTER", "host-lock"]],
    }
    waiting = make_instance(tenant, "/scaled")
    AppVersion.objects.filter(pk=waiting.version_id).update(definition=parse_app_definition(on_fresh).to_stored())
    developer = MembershipFactory(tenant=tenant, role=TenantRole.DEVELOPER).user
    access = tenant_access_resolve(user=developer, slug=tenant.slug)
    hosts_held = threading.Event()
    real_place = deployments.instance_place

    def place_and_hold(request):
        placement = real_place(request)
        if threading.current_thread().name == "scale":
            hosts_held.set()
            connection.cursor().execute("SELECT pg_sleep(0.5)")  # the host rows stay locked meanwhile
        return placement

    monkeypatch.setattr(deployments, "instance_place", place_and_hold)
    failures: list[BaseException] = []

    def contender(work):
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            close_old_connections()
            connection.close()

    def first_deploy(app_id):
        hosts_held.wait(timeout=20)
        app_services.app_create(access=access, definition=parse_app_definition({**on_fresh, "id": app_id}))

    threads = [
        threading.Thread(target=contender, args=(lambda: app_converge(app_id=waiting.app_id),), name="scale"),
        *(
            threading.Thread(target=contender, args=(lambda app_id=app_id: first_deploy(app_id),), name=app_id)
            for app_id in ("/first-a", "/first-b")
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    placed = Instance.objects.filter(tenant=tenant, host__name="host-lock")
    assert sorted(placed.values_list("app__marathon_id", flat=True)) == ["/first-a", "/first-b", "/scaled"]
    assert list(Network.objects.filter(tenant=tenant).values_list("name", flat=True)) == ["fresh"]
    assert sorted(placed.values_list("ip_address", flat=True)) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
