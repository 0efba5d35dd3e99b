"""The ClientApp: each SuperNode's client. `train` carries a round's model (and what comes
before it); `query` everything else: the login challenge, the welcome and blocks, scaffold's
probes, the closing block. Both are answered by the same client (node.py)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedchain.flower.config import FlowerRun
from fedchain.flower.node import answer


def make_client_app(run: FlowerRun | None = None) -> ClientApp:
    """A ClientApp for RUN, or for the run config of each message's run (`flwr run`)."""
    app = ClientApp()

    def settings_of(context: Context) -> FlowerRun:
        return run if run is not None else FlowerRun.from_config(context.run_config)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return answer(message, context, settings_of(context), say=print)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return answer(message, context, settings_of(context), say=print)

    return app


app = make_client_app()
