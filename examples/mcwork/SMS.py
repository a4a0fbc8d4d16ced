# Stand-in for EZTABLE's script: send the text messages.
print("sent SMS")
