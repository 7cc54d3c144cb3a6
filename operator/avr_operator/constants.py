"""Names shared by every layer: the API group, the field manager and the labels children carry."""

from typing import Final

GROUP: Final = "avr.agentvoiceresponse.com"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "AVRDeployment"
PLURAL: Final = "avrdeployments"
SINGULAR: Final = "avrdeployment"
SHORT_NAMES: Final = ("avrd",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

FIELD_MANAGER: Final = "avr-operator"

# Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
APP_NAME: Final = "avr"

ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"

# Longest AVRDeployment name: children are named "<name>-<component>" and must stay valid DNS labels.
MAX_NAME_LENGTH: Final = 52
