pytest_plugins = ["tests.support.portal_fixtures", "tests.support.live_stack", "tests.support.browser"]
