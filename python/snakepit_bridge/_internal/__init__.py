"""The worker's machinery, not part of the adapter author's surface: the
gRPC server and servicer, the tool runner, cancellation, the transport
secret, the fork server and the Elixir-bridge client. Import the public names
from :mod:`snakepit_bridge` instead; these modules may change without
notice."""
