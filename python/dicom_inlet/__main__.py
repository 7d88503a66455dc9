import sys

from dicom_inlet.cli import main

sys.exit(main())
