"""Public test helpers: use them to test your own policies and collateral
handling without AMD hardware or network.

* :mod:`stockade.testing.amd`: a fake AMD PKI (ARK, ASK/ASVK, VCEK/VLEK for
  Milan, Genoa and Turin), signed reports and CRLs;
* :mod:`stockade.testing.kds`: a fake AMD Key Distribution Service on
  127.0.0.1 with programmable faults.
* :mod:`stockade.testing.configfs`: fake SEV-SNP guest interfaces (a
  configfs-tsm "kernel" over a temporary tree, a /dev/sev-guest ioctl) for
  the snp attester, signing with the sim chip.

Nothing here gives or imitates hardware protection; fake chains carry the
organization "Fake AMD (stockade.testing) - NOT AMD" and never verify under
AMD's roots.
"""
