"""What nodes and the server both speak: the message codec and the node-side halves of protocols.

Nothing here imports ``flwr.serverapp`` nor :mod:`florec.strategies`, so a node (the ClientApp)
imports only this and never the server's code.
"""
