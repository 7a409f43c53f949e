from portal.models.app import App, AppVersion
from portal.models.deployment import Deployment
from portal.models.event import Event
from portal.models.host import ComputeHost
from portal.models.instance import Instance
from portal.models.network import Network, NetworkAllocation
from portal.models.volume import Volume

__all__ = [
    "App",
    "AppVersion",
    "ComputeHost",
    "Deployment",
    "Event",
    "Instance",
    "Network",
    "NetworkAllocation",
    "Volume",
]
