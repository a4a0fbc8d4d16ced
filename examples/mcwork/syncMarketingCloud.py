# Stand-in for EZTABLE's script: upload receivers and senders to Marketing Cloud.
print("synced subscribers")
