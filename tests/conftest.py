pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.portal_fixtures",
    "tests.support.live_stack",
    "tests.support.browser",
]
