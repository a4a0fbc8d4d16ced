# Stand-in for EZTABLE's script: send the emails.
print("sent EDM")
